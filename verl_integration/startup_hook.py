"""Target of ntl-verl's ``verl.plugins`` entry point, which verl imports at every ``import verl`` where ntl-verl is
installed: installs NTL's start-up check (``startup.py``) and nothing else, so a run that sets ``+ntl.*`` without
the plug-in still fails at start-up instead of training without NTL. NTL itself stays opt-in (``plugin.py``)."""

from .startup import install_startup_check

install_startup_check()
