"""Pulumi ComponentResources: the libvirt network and machines, and the kubeadm join chain.

The only package that imports Pulumi; it turns lab.topology's plan into resources.
"""
