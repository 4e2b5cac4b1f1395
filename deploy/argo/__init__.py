"""The Argo manifests of this folder, shipped as package data of `autolfads.argo.deploy`
(the one copy `autolfads argo render` reads); no code lives here."""
