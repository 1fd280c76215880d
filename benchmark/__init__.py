"""The project's benchmarks, one module per job: `python -m benchmark SUBCOMMAND` (see cli.py).

models.py   the compared models (SPEED_MODELS, ACCURACY_MODELS), built randomly initialised, and inputs
timing.py   calls timed in turns, latency statistics, peak memory
parts.py    the time of one inference split by model part
flops.py    FLOPs of one inference
speed.py    the speed table's measurements, each in a subprocess of worker.py
accuracy.py training the *_shapes configs and reading their metrics and logs
tables.py   the markdown tables and the speed-vs-accuracy plot
roi_align.py, blender.py  the op benchmarks
"""
