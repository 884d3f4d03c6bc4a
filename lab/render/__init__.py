"""Pure renderers: config + node in, file text out (cloud-init, kubeadm, kube-vip)."""
