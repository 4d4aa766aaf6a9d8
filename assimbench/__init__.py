"""assimbench's kernel: the floor every layer stands on; it imports nothing of the project.

Layers, bottom to top (an import only ever points down):

- ``assimbench`` user errors, parametrized names and content hashes, name -> class registries;
- ``problems``   forward models, observers and their datasets;
- ``methods``    the filters and their networks;
- ``bench``      the harness: grids, the runner, executors, storage, reports and the CLI.
"""
