"""Devices: the mesh and its logical-axis rules, multi-host start-up, and the choices that depend
on the hardware (attention backend, passes per step), made once per run (docs/scale-out.md)."""

from gptjax.parallel import distributed, hardware, sharding
from gptjax.parallel.hardware import check_config
