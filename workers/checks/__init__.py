"""Checks of the real Redis, Jenkins and cluster against what the configuration needs of them:
`jobs` before a build's first trigger (at run time, cached), `live` for
`ci-autoscaler check-config --live` and the start-up of the worker and the reconcile loop.
Each check says what is wrong in one line per problem, naming the job, parameter, verb or
namespace, and never a secret."""
