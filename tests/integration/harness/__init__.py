"""Test harness for the secrets-broker integration tests: real peers
(etcd, kube-apiserver, moto), a test PKI, a fault-injecting proxy and the
broker process itself. conftest.py wires these into pytest fixtures."""
