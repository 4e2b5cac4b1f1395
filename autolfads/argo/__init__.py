"""Argo Workflows deployment: render, validate, submit and run locally."""
