"""asv benchmarks of this code's own speed and accuracy over commits (see docs/benchmarks.md).

asv imports this folder as the package ``benchmarks`` (``benchmark_dir`` in ``asv.conf.json``); the modules
here import the project (``bench``, ``methods``, ``problems``) from the environment asv runs in.
"""
