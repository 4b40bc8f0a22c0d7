"""What the paper's experiments measure, as library code.

* :mod:`~diladiff_cli.analysis.prior_quality`: prior samples against held-out encoder
  latents (MMD^2, Frechet distance), the teacher/student checks and the interval
  diagnostic (``scripts/prior_report.py``);
* :mod:`~diladiff_cli.analysis.latent_analysis`: experiment 1's NELBO, reconstruction and
  latent-noise tables (``scripts/ae_report.py``);
* :mod:`~diladiff_cli.analysis.experiments`: the six paper experiments and their recipes
  (``scripts/reproduce.py`` and ``scripts/report.py``);
* :mod:`~diladiff_cli.analysis.verdicts`: the rules that check a claim against means over
  sampling seeds and their standard errors (``scripts/report.py``);
* :mod:`~diladiff_cli.analysis.benchmark`: every stage's training and sampling throughput
  (``scripts/bench.py``).

The submodules are imported by name (``from diladiff_cli.analysis.prior_quality import
...``): :mod:`~diladiff_cli.analysis.experiments` and
:mod:`~diladiff_cli.analysis.verdicts` need no torch, and importing this package does not
pull the others in.
"""
