module k8s-libvirt-lab/image/go/kubernetes

// The modules are pinned per version in <version>.mod and .sum beside this file (pin.sh);
// the build picks one with -modfile. Go still needs this file to find the module root.

go 1.24.0
