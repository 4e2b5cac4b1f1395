"""Katib's suggestion API served by this project's PBT (`autolfads katib ...`).

A second wire onto the same PBT search as the coordinator's gRPC service:

    suggestion  Katib's suggestion protocol on top of `CoordinatorService`
    servicer    the gRPC face (`api.v1.beta1.Suggestion`); `serve` its loop
    convert     api.v1.beta1 messages <-> plain values of `experiment`
    experiment  what Katib tells the service, and the check of it
    names       trial names: the one identity a trial container gets
    records     what a trial needs and leaves, in storage under the run
    trial       `autolfads trainer --katib-trial NAME`: one trial = one segment
    manifest    the Experiment of a run config (`katib render`)
    webhook     Katib's admission rules, checked offline
    submit      render, check and create the Experiment (`katib submit`)
    options     what render and submit may set (no heavy imports)
"""
