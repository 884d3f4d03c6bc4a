"""Pure renderers: config + node in, file text out (cloud-init, kubeadm, flannel)."""
