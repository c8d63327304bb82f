"""The grammar's words: directions, negation, "change nothing", sizes and goals, in English and in the other
languages users write in (Spanish, French, German, Portuguese, Italian, Chinese, Japanese).

Why word lists at all, beside the embedding (``agents.expert.embedding``): direction, negation and numbers are
exactly what a sentence embedding reads poorly and a short list reads exactly. The lists name *how* things are
asked (raise, lower, halve, "too high", "don't"); *what* is asked about (the knob, the goal) comes from the task's
declared vocabulary and from the embedding, so a new task needs no entry here. Latin-script words are matched at
word starts (stems such as ``reduc`` cover reduce/reducir/réduire); Chinese and Japanese, written without spaces,
as substrings.
"""

from __future__ import annotations

import re

# --------------------------------------------------------------------------- directions
EN_DOWN = (
    r"lower|lowering|lowered|reduc\w*|decreas\w*|cut|cutting|halv\w*|half|drop|dropping|shrink\w*|smaller|less|"
    r"lessen|diminish\w*|divid\w*|slash\w*|weaken\w*|turn down|bring down|scale down|dial down|tone down|go down|"
    r"down|downward|decay|anneal\w*|shorter|softer|weaker|lighter|slower|tiny|tighten\w*|tighter|narrow\w*|"
    r"fewer|minus|shave|trim|ease off|back off|pull back|dampen|soften|gentler|calmer"
)
ARROWS_DOWN, ARROWS_UP = r"↓|⬇|⇩|(?<=[\w#])--|(?<=[\w#])-(?=\s*$)", r"↑|⬆|⇧|\+\+|(?<=\w)\+(?=\s*$)"
EN_UP = (
    r"rais\w*|increas\w*|higher|bigger|larger|more|boost\w*|bump\w*|doubl\w*|tripl\w*|grow\w*|strengthen\w*|"
    r"turn up|scale up|crank\w*|ramp up|step up|go up|up|upward|introduce|give (?:it )?(?:some|more|a bit)|heavier|stronger|longer|greater|add|adding|"
    r"loosen\w*|looser|widen\w*|wider|relax\w*|amplif\w*|enlarg\w*|plus|extra|put (?:in )?(?:some|a bit of|more)|bring in|put in"
)
# Other languages: verbs by stem, comparatives whole. ("plus"/"más"/"mais"/"mehr"/"più": more.)
FOREIGN_DOWN = (
    r"baj\w*|reduc\w*|reduz\w*|disminu\w*|diminu\w*|menos|menor|bais\w*|rédui\w*|moins|abaiss\w*|senk\w*|"
    r"verringer\w*|reduzier\w*|niedriger\w*|weniger|kleiner\w*|verkleiner\w*|halbier\w*|minder\w*|runter|"
    r"herunter\w*|baix\w*|abbass\w*|ridu\w*|dimezz\w*|meno|mitad|moitié|metade|inferior\w*|decrement\w*|"
    r"recort\w*|abaix\w*|divis\w*|dividi\w*|teil\w*|stringi\w*|serr\w*|resser\w*|enger\w*|"
    r"estrech\w*|estreit\w*|restring\w*|verklein\w*|togli\w*|quit\w*|retir\w*|enlev\w*|entfern\w*"
)
FOREIGN_UP = (
    r"aument\w*|sub(?:e|ir|a|an|amos|ela|elo|iendo)|más|mayor|augment\w*|plus|hauss\w*|élev\w*|monte\w*|erhöh\w*|höher\w*|mehr|größer\w*|"
    r"vergrößer\w*|steiger\w*|verdoppel\w*|hoch|rauf|herauf\w*|elev\w*|mais|maior|alz\w*|più|raddoppi\w*|"
    r"dobl\w*|dupli\w*|dobr\w*|superior\w*|increment\w*|aggiung\w*|añad\w*|agreg\w*|ajout\w*|hinzu\w*|"
    r"adicion\w*|acrescent\w*|élarg\w*|ampl[ií]\w*|erweiter\w*|lockern\w*|allarg\w*|alarg\w*|dazu|quadrupl\w*|"
    r"sobe|s[uú]bel[oae]|subidinha|coloc\w*|bota|bote|mete|metemos|mets|metti|renforc\w*|reforz\w*|reforç\w*|verstärk\w*|"
    r"rafforz\w*|introduc\w*|introdu\w*|füg\w* hinzu"
)
CJK_DOWN = r"调小|减小|小さめ|弱め|さげ|收紧|缩紧|狭め|絞|降低|降|减少|减小|减半|调低|下调|变小|缩小|小一点|低一点|少一点|下げ|減ら|小さく|半分|低く|少なく|弱め|弱く|緩め"
CJK_UP = r"调大|加大|追加|加入|入れ|増し|あげて|加(?=\s*[\d.])|強め|放宽|加点|加一点|加些|多加|広げ|緩め|提高|提升|增加|增大|加倍|调高|上调|变大|放大|大一点|高一点|多一点|加大|上げ|増や|大きく|倍に|高く|多く|強め|強く"
DOWN_PATTERN = re.compile(rf"(?<!\w)(?:{EN_DOWN}|{FOREIGN_DOWN})(?!\w)|{CJK_DOWN}|{ARROWS_DOWN}")
UP_PATTERN = re.compile(rf"(?<!\w)(?:{EN_UP}|{FOREIGN_UP})(?!\w)|{CJK_UP}|{ARROWS_UP}")
# A state word asks for the opposite of itself: "the learning rate is too high", "seems a bit low", "not enough".
STATE_HIGH = (
    r"too (?:high|large|big|much|strong|aggressive|fast|hot|wide|loose|heavy|generous|big)|excessive|overkill|"
    r"on the (?:high|aggressive|large|big|heavy|strong|hot) side|"
    r"(?:is|seems|looks|feels|was|are|'s) (?:a (?:bit|little|tad) |quite |rather |way |really |very |kind of |"
    r"pretty |probably |still |too )?(?:high|large|big|strong|aggressive|fast|hot|wide|loose|heavy)\b|"
    r"demasiado (?:alt|grand|fuert|agresiv)\w*|trop (?:élev|haut|grand|fort)\w*|zu (?:hoch|groß|stark)\w*|"
    r"muito (?:alt|grand|fort)\w*|troppo (?:alt|grand|fort)\w*|太高|太大|太强|高すぎ|大きすぎ|強すぎ"
)
STATE_LOW = (
    r"too (?:low|small|little|weak|slow|timid|tight|narrow|conservative|light|stingy|cautious|tiny)|not enough|insufficient|"
    r"on the (?:low|small|conservative|timid|light|cautious) side|"
    r"(?:is|seems|looks|feels|was|are|'s) (?:a (?:bit|little|tad) |quite |rather |way |really |very |kind of |"
    r"pretty |probably |still |too )?(?:low|small|weak|tiny|tight|narrow|light|stingy)\b|"
    r"demasiado (?:baj|pequeñ|débil|ajustad|estrech)\w*|demasiado lent\w*|trop (?:bas|faible|petit)\w*|zu (?:niedrig|klein|schwach)\w*|"
    r"muito (?:baix|pequen|frac)\w*|troppo (?:bass|piccol|debol)\w*|太低|太小|太弱|太紧|太窄|紧了|低すぎ|小さすぎ|弱すぎ|狭すぎ|きつすぎ|trop serré\w*|zu eng\w*|muito apertad\w*|troppo stretto"
)
STATE_DOWN = re.compile(STATE_HIGH)
STATE_UP = re.compile(STATE_LOW)
NEGATION = re.compile(
    r"(?<!\w)(?:do not|don't|dont|doesn't|never|not|no longer|stop|avoid|without|nor|no need to|"
    r"shouldn't|should not|mustn't|no|ni|nicht|kein\w*|não|nao|non|ne|pas|jamais|nunca|sans|sin|ohne|sem|senza)(?!\w)|"
    r"不要|别|不用|ないで|ません"
)
# "keep X", "leave X alone", "don't touch X": X must not move.
KEEP_PATTERN = re.compile(
    r"(?<!\w)(?:keep|leave|hold|same|fix|fixed|freeze|frozen|untouched|alone|as is|unchanged|stays?|hands off|"
    r"touch|chang\w*|modif\w*|adjust\w*|tweak\w*|alter\w*|mess with|mantén|manten\w*|deja|laisse|garde|"
    r"behalte|lass|mantenha|deixe|mantieni|lascia|tocc\w*|toqu\w*|touche\w*|anfass\w*|mex\w*|ändere?)(?!\w)|"
    r"保持|不变|不动|别动|そのまま|維持|触ら|触れ|変えな"
)
HOLD_PATTERN = re.compile(
    r"change nothing|nothing (?:to change|needs changing|should change)|do nothing|don'?t (?:change|touch|adjust|"
    r"tweak|modify|alter|do) (?:a )?(?:thing|anything)|do not (?:change|touch|adjust|tweak|modify|alter|do) "
    r"(?:a )?(?:thing|anything)|no (?:changes?|adjustments?|tweaks?|modifications?|action|interventions?|edits?)|"
    r"keep (?:every|all|things|it|everything)|leave (?:every|all|it|things|everything)|hold (?:every|all|still|steady|"
    r"it|off|everything|fire)|stay the course|stay put|freeze|as (?:it|they) (?:is|are)|unchanged|don'?t touch|"
    r"do not touch|hands off|let it (?:ride|run|be|cook|go|train)|carry on|keep going|continue as|same as before|"
    r"nothing(?: at all)?(?: this time| for now| please)?[.!]?$|not? (?:change|touch)|all good|"
    r"leave (?:it|things|everything|the (?:config\w*|settings?|hyperparameters?|knobs?)) (?:alone|untouched|be)|untouched|"
    r"no (?:cambi|toqu)\w* nada|deja (?:todo|las cosas)|ne (?:chang|touch)\w* (?:à )?rien|laisse(?:z)? tout|"
    r"nichts (?:ändern|anfassen|verändern)|ändere nichts|lass (?:alles|es)|não (?:mud|mex|alter)\w* (?:em )?nada|"
    r"deix[ae] (?:tudo|como)|non (?:cambi|tocc)\w* (?:niente|nulla)|lascia (?:tutto|stare)|"
    r"什么都不|都不要|保持不变|保持现状|不要改|别改|別改|何も(?:変え|し|触ら)|そのまま|現状維持|触らないで|変えないで|いじらないで|"
    r"sort itself out|be patient|patience|このままで|続けてください|このまま続け|何も変更|ハイパーパラメータに触ら|"
    r"wait and see|give it (?:some )?time|no intervention|don'?t intervene|no need to (?:change|touch|intervene|act)|"
    r"sigue así|que siga|d[ée]jalo (?:correr|así|como está|estar|tranquilo)|no (?:hagas|toques|cambies) nada|nada de cambios|"
    r"sin cambios|laisse[rz]? (?:tourner|faire|comme|tel)|ne (?:fais|faites|change|touche)\w* rien|aucun changement|"
    r"continue comme ça|rien à changer|weiterlaufen|lass (?:es|alles|ihn) (?:so|laufen|in ruhe)|nichts (?:tun|machen|ändern)|"
    r"keine änderung|so lassen|passt so|deix[ae] (?:rodar|assim|como está|quieto)|não (?:faça|faz|mude|mexa|mexe)\w* nada|"
    r"nenhuma mudança|continua assim|segue assim|sem mudanças|lascia(?:lo)? (?:andare|così|stare|correre)|"
    r"non (?:fare|toccare|cambiare) (?:niente|nulla)|nessun cambiamento|continua così|"
    r"不用改|不要动|继续跑|保持原样|不用调|先别改|照旧|维持现状|不做任何|别做任何|何もしない|変更なし|現状のまま|様子を見|様子見"
)
REPEAT_PATTERN = re.compile(
    r"\bevery\b|\beach\b|\bkeep (?:lowering|raising|reducing|increasing|cutting)|\bcontinu|\bagain and again|"
    r"\bfrom now on\b|\bcada\b|\bchaque\b|\bjede\w*|\bogni\b|每|毎"
)

# --------------------------------------------------------------------------- sizes
NUMBER = r"((?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)"  # no sign: no knob takes a negative value
HALF = re.compile(r"\bhalv|\bhalf\b|\bby half|mitad|moitié|halbier|hälfte|metade|metà|dimezz|一半|减半|半分")
DOUBLE = re.compile(r"\bdoubl|\btwice|dobl|\bdouble|verdoppel|doppelt|dobr|raddoppi|duplic|加倍|翻倍|2倍|二倍")
TRIPLE = re.compile(r"\btripl|\bthree ?times|triplic|verdreifach|3倍|三倍")
OFF = re.compile(
    r"\b(?:turn|switch|shut|toggle|flip|set|take)\b[^.]{0,30}\boff\b|#\s*off\b|^\W*off\b|\bdisabl|\bremov|\bto zero|\bzero (?:it|out|#)|#\s*(?:to|=)?\s*zero\b|\bno more\b|\bkill|"
    r"\bget rid of|\beliminat|\bdesactiv|\bdésactiv|\bdeaktiv|\babschalt|\bquit|\bsupprim|"
    r"\belimin|\btogli|\bquita|\bquitar|\bretir|\benlève|\benlever|\bentfern|\bschalt\w*.*\b(?:ab|aus)\b|"
    r"\bapaga|\bdesliga|\bspegn|关闭|去掉|关掉|オフ|無効|なくして|なくす|外し|取り除"
)
ORDER_OF_MAGNITUDE = re.compile(r"order(?:s)? of magnitude|orden de magnitud|ordre de grandeur|größenordnung|数量级|桁")
SMALL_PATTERN = re.compile(
    r"a little|slightly|a bit|a touch|somewhat|gently|a tad|marginally|a smidge|a hair|(?<!too )\bsmall\b|"
    r"un poco|ligeramente|un peu|légèrement|etwas|ein bisschen|ein wenig|leicht|um pouco|ligeiramente|un po|一点|稍微|少し|ちょっと|やや"
)
TARGET_WORDS = r"(?:\bto|\bat|=|->|→|:=|:|\ba|\bà|\bauf|\bpara|\bsu|\bsobre|到|为|成|に|を)"

# --------------------------------------------------------------------------- goals
# A pattern over the instruction per goal; ``instructions.GOAL_MOVES`` says which moves pursue each.
GOALS: tuple[tuple[str, re.Pattern], ...] = (
    ("less underfitting", re.compile(r"underfit|under-fit|too much regulari|regulari\w*[^.]{0,20}(?:excessive|too (?:strong|much|heavy|high)|overkill)|(?:less|reduce|lower|weaker|decrease) "
                                     r"(?:the )?regulari|regulari[sz]e less|not learning enough|not (?:even )?fitting|"
                                     r"more (?:freedom|capacity|flexib)|too constrained|can'?t (?:even )?fit|over-?regulari|"
                                     r"sous-apprent|subajust|unteranpass")),
    ("less overfitting", re.compile(r"overfit|over-fit|memori[sz]|generali[sz]|regulari|too well on (?:the )?train|"
                                    r"gap\b[^.]*\b(?:widen|grow|increas|bigger|larger)|train[^.]{0,60}\b(?:but|while|whereas)\b[^.]{0,20}\bval|"
                                    r"\bval\w*[^.]{0,40}(?:slid|worse|declin|deteriorat|went up|going up|rising)[^.]*\btrain|"
                                    r"sobreajust|sur-?appren|surajust|überanpass|sobreajust|过拟合|過学習")),
    ("stability", re.compile(r"unstable|instabil|stab(?:le|ility|ilize|ilise)|jump|oscillat|diverg|spik|noisy|"
                             r"erratic|explod|blow|bounc|fluctuat|careful|cautious|conservative|safe|gentle|calm|"
                             r"violent|nans?\b|\binf\b|swing|chaotic|wild|collaps|crash|unravel|smaller updates|updates? (?:smaller|gentler)|too aggressiv|slow (?:it )?down|smaller steps|inestab|instável|"
                             r"不稳定|発散|不安定")),
    ("speed", re.compile(r"faster|speed|quick|too slow|slowly|\bslow\b|accelerat|more aggressive|hurry|rapid|más rápido|"
                         r"plus vite|schneller|mais rápido|更快|速く|\blent|\blento|langsam|太慢|遅い|遅すぎ")),
    ("exploitation", re.compile(r"exploit|less random|more greedy|greedier")),
    ("exploration", re.compile(r"explor|more random|erkund|esplor|探索|探検|(?:other|new|different) actions|try (?:more|other|new) things")),
    ("escape the plateau", re.compile(r"stuck|plateau|stall|not improving|stagnat|\bflat\b|estanc|bloqué|停滞")),
)  # fmt: skip

TRAIN_VALUE = re.compile(rf"\b(?:train|entren|entraîn|trein|addestr)\w*[^\d]{{0,20}}?{NUMBER}")
VALIDATION_VALUE = re.compile(rf"\b(?:val\w*|valid\w*|test|eval\w*|dev|validaç\w*)[^\d]{{0,20}}?{NUMBER}")
LOWER_IS_BETTER = re.compile(r"\b(?:loss|rmse|mse|mae|error|err)\b")


def gap_goal(text: str) -> str | None:
    """A goal from a train/validation pair of numbers in ``text`` ("train acc 99%, val 85%", "train loss 0.02 vs
    val loss 0.4"): "less overfitting" when validation trails training by more than 3 points (accuracy-like,
    higher is better) or by more than 30 % (loss-like: loss, rmse, error); else None."""
    train, validation = TRAIN_VALUE.search(text), VALIDATION_VALUE.search(text)
    if train is None or validation is None:
        return None
    t, v = float(train.group(1)), float(validation.group(1))
    if LOWER_IS_BETTER.search(text):
        return "less overfitting" if v > 1.3 * t else None
    scale = 100.0 if max(t, v) > 1 else 1.0
    return "less overfitting" if (t - v) / scale > 0.03 else None


# --------------------------------------------------------------------------- rollback
# "Go back to the best epoch": the best checkpoint so far, asked for in English, German, Spanish or French. A verb of
# returning must come near the word "best" ("return the learning rate to 1e-3" names no best); "roll back" alone
# is enough.
ROLLBACK_PATTERN = re.compile(
    r"\broll(?:ing|ed)?[ -]?back\b|\b(?:back|return\w*|revert\w*|restor\w*|reload\w*|rewind\w*)\b[^.;!?]{0,30}\bbest\b|"
    r"\b(?:zurück\w*|wiederherstell\w*)[^.;!?]{0,30}\bbest|\bbest\w*\b[^.;!?]{0,30}(?:wieder ?her|zurück)|"
    r"\b(?:vuelv\w*|volv\w*|regres\w*|restaur\w*|revert\w*|recuper\w*)\b[^.;!?]{0,30}\bmejor|"
    r"\b(?:revien\w*|reven\w*|retourn\w*|restaur\w*|rétabl\w*|recharg\w*)\b[^.;!?]{0,30}\bmeilleur"
)


def asks_rollback(lowered: str) -> bool:
    """Whether the lower-cased instruction asks to return to the best epoch so far (:data:`ROLLBACK_PATTERN`),
    not negated just before ("don't roll back", "ne reviens pas ...": a negation within 20 characters)."""
    for match in ROLLBACK_PATTERN.finditer(lowered):
        if not NEGATION.search(lowered[max(0, match.start() - 20) : match.end()]):
            return True
    return False
