"""The side-effect boundary: what the actors need from a cluster, and Ray's implementation of it."""
