#!/usr/bin/env bash
# The seed's join strategy, for comparison with `lab join` (benchmarks/join_bench.py runs it):
# join at once, no stability gate, no stale-learner cleanup; on failure `kubeadm reset -f`, sleep
# 60 s, try again, up to 5 attempts (the guide's "Retry loop: reset node -> sleep 60s -> retry").
#
# usage: seed_join.sh NODE NODE_ADDRESS
# env:   SSH (the ssh command with key and known_hosts options), CP1 (cp1's address),
#        ATTEMPTS (default 5), SLEEP (default 60)
set -uo pipefail
node=$1 addr=$2
attempts=${ATTEMPTS:-5} sleep_s=${SLEEP:-60}
on() { local host=$1; shift; $SSH "root@$host" "$@"; }

for attempt in $(seq 1 "$attempts"); do
    echo "seed: $node attempt $attempt/$attempts"
    token=$(on "$CP1" kubeadm token create --ttl 1h) || exit 1
    key=$(on "$CP1" kubeadm init phase upload-certs --upload-certs | tail -n1) || exit 1
    hash=$(on "$CP1" "openssl x509 -pubkey -noout -in /etc/kubernetes/pki/ca.crt \
        | openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1") || exit 1
    on "$addr" "mkdir -p /etc/kubernetes/lab && cat > /etc/kubernetes/lab/join.yaml" <<YAML
apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: $CP1:6443
    token: $token
    caCertHashes: [sha256:$hash]
nodeRegistration: {name: $node}
controlPlane:
  localAPIEndpoint: {advertiseAddress: $addr, bindPort: 6443}
  certificateKey: $key
YAML
    if on "$addr" kubeadm join --config /etc/kubernetes/lab/join.yaml; then
        echo "seed: $node joined on attempt $attempt"
        exit 0
    fi
    echo "seed: $node join failed; kubeadm reset -f; sleeping ${sleep_s}s"
    on "$addr" kubeadm reset -f
    [ "$attempt" -lt "$attempts" ] && sleep "$sleep_s"
done
echo "seed: $node did not join after $attempts attempts"
exit 1
