// Command flanneld is the lab's flannel daemon: flannel's Kubernetes subnet manager and its
// VXLAN backend, nothing else. flannel's own main imports every backend, and one of them needs a
// module the Go proxy does not serve, so the lab builds this smaller main on flannel's packages.
//
// It does what flanneld does with --kube-subnet-mgr --ip-masq: take this node's pod CIDR from the
// Node object, bring up flannel.1 with a route and an FDB entry per peer node, masquerade traffic
// leaving the pod network, allow forwarding for it, and write subnet.env for the CNI plugin.
package main

import (
	"context"
	"flag"
	"math/big"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/flannel-io/flannel/pkg/backend"
	_ "github.com/flannel-io/flannel/pkg/backend/vxlan"
	"github.com/flannel-io/flannel/pkg/ip"
	"github.com/flannel-io/flannel/pkg/ipmatch"
	"github.com/flannel-io/flannel/pkg/subnet/kube"
	"github.com/flannel-io/flannel/pkg/trafficmngr/iptables"
	log "k8s.io/klog/v2"
)

func main() {
	netConf := flag.String("net-config", "/etc/kube-flannel/net-conf.json", "flannel's network configuration (Network, Backend)")
	subnetFile := flag.String("subnet-file", "/run/flannel/subnet.env", "where the CNI plugin reads this node's subnet")
	iface := flag.String("iface", "", "interface for node-to-node traffic (default: the one with the default route)")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig (default: the pod's service account)")
	// flanneld's own flag: seconds between checks that its iptables rules are still there. Each
	// check runs iptables a few times; the lab raises it under software emulation.
	resync := flag.Int("iptables-resync", 5, "seconds between resyncs of the iptables rules")
	flag.Parse()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() { <-signals; cancel() }()

	if err := run(ctx, *netConf, *subnetFile, *iface, *kubeconfig, *resync); err != nil {
		log.Errorf("flanneld: %v", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, netConf, subnetFile, iface, kubeconfig string, resyncSeconds int) error {
	// NODE_NAME (or POD_NAME and POD_NAMESPACE) tell the subnet manager which Node is ours.
	sm, err := kube.NewSubnetManager(ctx, "", kubeconfig, "flannel.alpha.coreos.com", netConf, true)
	if err != nil {
		return err
	}
	config, err := sm.GetNetworkConfig(ctx)
	if err != nil {
		return err
	}
	if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
		return err // without br_netfilter, service traffic on the bridge bypasses kube-proxy
	}
	stack, err := ipmatch.GetIPFamily(config.EnableIPv4, config.EnableIPv6)
	if err != nil {
		return err
	}
	extIface, err := ipmatch.LookupExtIface(iface, "", "", stack, ipmatch.PublicIPOpts{})
	if err != nil {
		return err
	}

	var wg sync.WaitGroup
	be, err := backend.NewManager(ctx, sm, extIface).GetBackend(config.BackendType)
	if err != nil {
		return err
	}
	network, err := be.RegisterNetwork(ctx, &wg, config)
	if err != nil {
		return err
	}
	lease := network.Lease()

	rules := &iptables.IPTablesManager{}
	if err := rules.Init(ctx); err != nil {
		return err
	}
	none6 := ip.IP6Net{IP: (*ip.IP6)(big.NewInt(0))}
	if err := rules.SetupAndEnsureMasqRules(ctx, config.Network, ip.IP4Net{}, ip.IP4Net{},
		config.IPv6Network, none6, none6, lease, resyncSeconds, false); err != nil {
		return err
	}
	rules.SetupAndEnsureForwardRules(ctx, config.Network, config.IPv6Network, resyncSeconds)

	if err := sm.HandleSubnetFile(subnetFile, config, true, lease.Subnet, lease.IPv6Subnet, network.MTU()); err != nil {
		return err
	}
	log.Infof("flanneld: %s is ours, subnet file %s written", lease.Subnet, subnetFile)

	wg.Add(1)
	go func() { defer wg.Done(); network.Run(ctx) }()
	// Marks the node's network available; the backend runs until SIGTERM.
	if err := sm.CompleteLease(ctx, lease, &wg); err != nil {
		return err
	}
	wg.Wait()
	return nil
}
