module k8s-libvirt-lab/image/go/pause

go 1.24.0
