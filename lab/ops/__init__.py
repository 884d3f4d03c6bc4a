"""The operations the join chain runs and a person runs by hand: gate, join, cleanup-learners,
diagnose, verify, leave. Plain asyncio over the two ports (lab.etcd, lab.ssh); no Pulumi here.
"""
