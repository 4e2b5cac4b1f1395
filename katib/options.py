"""What `autolfads katib render|submit` may set (no heavy imports: the CLI
reads the defaults while building its parser, in every image)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KatibOptions:
    storage: str = "s3://autolfads/runs"
    # The example profile namespace of a KubeFlow install.
    namespace: str = "kubeflow-user-example-com"
    image: str = "ghcr.io/autolfads/autolfads-trainer-cpu:0.1.0"
    suggestion_image: str = "ghcr.io/autolfads/autolfads-coordinator:0.1.0"
    s3_endpoint: str = "http://minio-service.kubeflow:9000"
    s3_region: str = "us-east-1"
    s3_secret: str = "autolfads-s3"
    device: str = "auto"
    cpu: str = "2"
    memory: str = "4Gi"
    threads: int = 2
