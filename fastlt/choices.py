"""The closed sets of names that recipes and the command line accept, in a module without imports, so the
command line can offer them as click choices without loading torch."""

EVAL_EXITS = ("backbone", "sub-network", "ensemble")  # the features linear evaluation can take
EVAL_PROTOCOLS = ("bcl", "sdclr", "ts")  # docs/evaluation.md; "all" runs these three
SEPARATE_PROTOCOLS = ("supcon", "finetune", "lotar")  # each trains ~100 epochs through the backbone: named alone
PROTOCOL_CHOICES = (*EVAL_PROTOCOLS, "all", *SEPARATE_PROTOCOLS)  # eval.protocol and linear-eval --protocol
