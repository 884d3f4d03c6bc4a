// pulumi-tfgen-libvirt writes the Pulumi schema (schema.json) that
// pulumi-resource-libvirt embeds; engine/build.sh runs it before that build.
package main

import (
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfgen"

	"k8s-libvirt-lab/engine/pulumi-resource-libvirt/provider"
)

func main() {
	tfgen.Main("libvirt", provider.Version, provider.Provider())
}
