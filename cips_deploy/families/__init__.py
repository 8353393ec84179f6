"""Model families in PyTorch (the ``build`` extra), their checkpoints and official import.

Each family has a framework-free description (:mod:`.cips_spec`, :mod:`.creps_spec`: the
:class:`~cips_deploy.contracts.families.Family` registered through ``register_families``)
and its modules (:mod:`.generator` and :mod:`.layers` for CIPS; :mod:`.creps` and
:mod:`.creps_layers` for CREPS), with the official way of computing beside each
(:mod:`.reference`, :mod:`.creps_reference`). :mod:`.checkpoint` reads every supported
file (our safetensors, official CIPS ``.pt`` through :mod:`.official`, official CREPS
pickles through :mod:`.official_creps`); :mod:`.weights` writes ours.
"""
