// Package provider maps terraform-provider-libvirt onto Pulumi tokens the way
// the pulumi_libvirt Python SDK expects: every resource in the "index" module
// (libvirt:index/domain:Domain, ...), provider config "uri" defaulting to
// $LIBVIRT_DEFAULT_URI, and auto-named "name" properties.
package provider

import (
	"github.com/dmacvicar/terraform-provider-libvirt/libvirt"
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge/tokens"
	shimv2 "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfshim/sdk-v2"
)

// Version is what the plugin reports to the engine; engine/build.sh sets it
// with -ldflags "-X .../provider.Version=0.5.4" to match the Python SDK.
var Version = "0.0.0-dev"

// Provider returns the bridge description of the libvirt provider.
func Provider() tfbridge.ProviderInfo {
	info := tfbridge.ProviderInfo{
		P:           shimv2.NewProvider(libvirt.Provider()),
		Name:        "libvirt",
		Version:     Version,
		GitHubOrg:   "dmacvicar",
		Description: "A Pulumi package for creating and managing libvirt resources.",
		License:     "Apache-2.0",
		Config: map[string]*tfbridge.SchemaInfo{
			"uri": {Default: &tfbridge.DefaultInfo{EnvVars: []string{"LIBVIRT_DEFAULT_URI"}}},
		},
		// The one name the standard token rule spells differently from the SDK.
		Resources: map[string]*tfbridge.ResourceInfo{
			"libvirt_cloudinit_disk": {Tok: "libvirt:index/cloudInitDisk:CloudInitDisk"},
		},
	}
	info.MustComputeTokens(tokens.SingleModule("libvirt_", "index", tokens.MakeStandard("libvirt")))
	info.SetAutonaming(255, "-")
	return info
}
