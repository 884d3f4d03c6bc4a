//go:build tools

// Package tools pins CoreDNS, the cluster DNS kubeadm deploys, so `go build` builds it here.
package tools

import _ "github.com/coredns/coredns"
