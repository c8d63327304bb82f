"""From a policy's answer to a checked command: the :class:`~agents.proposals.proposal.Proposal` (what every policy
proposes), reading a model's answer text into one (``answer_text``, ``parse``), and the checks that turn it into an
``UpdateCommand`` with its clamps (``check``)."""
