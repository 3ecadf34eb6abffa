"""The developer tools, apart from the teaching code: benchmarks (``bench``: ``python -m
icm_lib bench``), the training-step benchmark of the ``paper`` profile (``stepbench``: ``bench
paper-step``), the fuzzer of every input door (``fuzz``: ``python -m icm_lib fuzz``) and what they
share (``common``). Nothing in the tutorial imports them."""
