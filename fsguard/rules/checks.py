"""The settings as the rules read them: the checks of a value that only a rule can judge.

fsguard.config checks each value's form and is data only; here are the checks that need the rules
themselves, run section by section as the settings are loaded (``fsguard serve``, its reload on
SIGHUP or POST /api/reload, ``fsguard config check`` and every other command load them through
:func:`load_settings`):

* ``[routing]``: the routing table is built (rules, business hours, holidays, time zone, targets),
  so a bad rule stops start-up instead of the first call;
* ``[screening]``: ``stir_actions`` names only outcomes STIR/SHAKEN knows (A, B, C, passed, none,
  failed and its failure codes).
"""

from __future__ import annotations

from pathlib import Path

from fsguard.config import (SCREENING_STIR_ACTIONS, ConfigError, RoutingSettings, ScreeningSettings, SectionChecks,
                            Settings)
from fsguard.config import load_settings as load_values
from fsguard.rules.routing import build_table
from fsguard.rules.stirshaken import FAILURE_CODES

__all__ = ["SECTIONS", "load_settings", "validate"]


def check_screening(cfg: ScreeningSettings) -> None:
    """Every ``screening.stir_actions`` key is an outcome or a failure code STIR/SHAKEN knows."""
    for key in cfg.stir_actions:
        if key not in SCREENING_STIR_ACTIONS and key not in FAILURE_CODES:
            raise ConfigError(f"screening.stir_actions.{key}: unknown outcome (known: "
                              f"{', '.join([*SCREENING_STIR_ACTIONS, *FAILURE_CODES])})")


def check_routing(cfg: RoutingSettings) -> None:
    """The routing table builds: each rule, the hours, holidays, time zone and targets are right."""
    build_table(cfg)


#: the checks by section, in the form fsguard.config runs them
SECTIONS: SectionChecks = {"screening": check_screening, "routing": check_routing}


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """The settings (defaults, file, environment) with every check, the rules' included; raises
    ConfigError naming the key (with every problem found in ``problems``)."""
    return load_values(path, env, checks=SECTIONS)


def validate(settings: Settings) -> None:
    """Check settings built in code (tests, the lab) as :func:`load_settings` checks loaded ones."""
    settings.validate(SECTIONS)
