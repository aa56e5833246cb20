"""The command lines: run (one experiment, a chain of stages), sweep (a config's `sweep(add)` over run
directories), tables (mean ± std tables and plots of a sweep), repro (a paper's sweep + tables + docs), bench and
roofline (speed), and analysis/ (post-hoc figures and tables of the paper reproductions). The stage kinds they
run live in jaxrlhf.stages (the table is jaxrlhf.stages.kinds.KINDS).
"""
