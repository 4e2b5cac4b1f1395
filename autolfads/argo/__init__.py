"""Argo Workflows deployment: render, validate and submit the workflow.

manifests  the manifests as data (shipped from deploy/argo as `deploy`)
render     the Workflow of one run config (`argo render`)
validate   strict offline validation (Argo and core Kubernetes schemas)
semantics  checks no schema expresses; `depends` the DAG expressions
submit     stage the run, create the Workflow, follow it (`argo submit`)
stop_search  the workflow's step that stops a search whose trainers all failed
"""
