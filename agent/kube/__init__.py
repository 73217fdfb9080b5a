"""The Kubernetes Service of an agent: Teleport's kube forwarder in front of an emulated Kubernetes API."""
