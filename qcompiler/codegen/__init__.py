"""Schedule rules per target: `rule.py` (registry, lookup), `generic.py` (always-correct rules
for every `schedule_kind`); target families add packages (x86/, arm/) to `rule.RULE_MODULES`."""
