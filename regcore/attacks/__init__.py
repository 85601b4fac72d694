"""Adversarial attacks: untargeted, white-box, in pixel space on inputs in [0, 1].

Each module here registers one attack in ``regcore.registries.ATTACKS`` (``fgsm``,
``pgd``, ``autoattack``); ``ATTACKS.build(name, params)`` returns a callable
``attack(model, x, y, eps) -> x_adv`` with eps a float or a per-sample (B,) tensor
(``regcore.attacks.base``). ``regcore.attacks.pgd`` also holds FGSM and PGD (Linf and
L2) as pure batched functions. The model is in eval mode during an attack (its mode is
restored after) and no gradient is ever accumulated into its parameters.
"""
