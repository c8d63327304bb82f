"""The expert block: the decision the embedded model can make well. With no model, it reads the user's
instruction (``instructions``) and the measured trends (``evidence``) into a few candidate actions consistent with
both (``candidates``); a chooser lets a model pick one and say why (``choosers``, ``rationale``); and every
controller's command is judged against the instruction in force (``outcome``)."""
