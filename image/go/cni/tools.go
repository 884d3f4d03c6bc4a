//go:build tools

// Package tools pins flannel's CNI plugin. Debian's CNI plugins lack it, and its own module
// (flannel-io/cni-plugin) is not served; containernetworking/plugins v0.9.1 is the last release
// that still carries it. It only reads flanneld's subnet.env and hands the pod to Debian's
// bridge and host-local plugins.
package tools

import _ "github.com/containernetworking/plugins/plugins/meta/flannel"
