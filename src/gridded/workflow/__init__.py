"""The same pipeline as Argo Workflows on Kubernetes: options, rendering (hera's models), submission."""
