"""Deployment of the suite on Kubernetes: image build files, kustomize tree, tooling.

Python here renders, checks, applies and smoke-tests the manifests under deploy/k8s/; it never
talks to a cluster unless asked to (`python -m deploy.tool deploy ...`).
"""
