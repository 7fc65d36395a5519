"""Stand-in for the `wit_world` bindings componentize-py generates from wit/sluice.wit (world
`module`), for the SDK's tests on plain CPython. Set SLUICE_PY_BINDINGS to a directory made by
`componentize-py -d wit -w module bindings DIR` to run the tests against the real bindings."""
