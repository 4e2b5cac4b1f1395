"""Katib's suggestion API served by this project's PBT (`autolfads katib ...`)."""
