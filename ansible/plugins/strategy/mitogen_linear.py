"""The linear strategy run by Mitogen for Ansible (the `mitogen` package, installed with the project's
Ansible): each host keeps one Python interpreter per user for the whole run and the modules execute in it,
where plain Ansible starts a new interpreter for every task. On this project's playbooks that is most of a
task's time: docs/topology.md, "Speed". ansible.cfg names it (strategy = mitogen_linear); a play or a run
can still ask for plain Ansible with ANSIBLE_STRATEGY=linear.

Mitogen's own plugin directory lies inside its installed package; this module takes the strategy from the
installed package instead, so ansible.cfg needs no path into a virtual environment.
"""

import ansible_mitogen.loaders
import ansible_mitogen.strategy

Base = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Base):
    pass
