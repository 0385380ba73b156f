"""Expected SQuAD metric values for tests/qa_metric.rs.

Reproduces the official evaluate-v1.1.py and evaluate-v2.0.py formulas verbatim (normalize_answer,
f1_score / compute_f1, exact_match_score / compute_exact, the v1.1 `evaluate` loop, the v2.0
`make_eval_dict` and `find_best_thresh`) and writes squad_metric_cases.json.
Run: python3 tests/data/squad_metric_cases.py
"""
import collections
import json
import os
import re
import string


# ---- evaluate-v1.1.py ----
def normalize_answer(s):
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction, ground_truth):
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, gt) for gt in ground_truths)


def evaluate_v1(items):
    f1 = exact_match = total = 0
    for it in items:
        total += 1
        if it["prediction"] is None:
            continue
        exact_match += metric_max_over_ground_truths(exact_match_score, it["prediction"], it["references"])
        f1 += metric_max_over_ground_truths(f1_score, it["prediction"], it["references"])
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


# ---- evaluate-v2.0.py ----
def get_tokens(s):
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold, a_pred):
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold, a_pred):
    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def find_best_thresh(preds, scores, na_probs, qid_to_has_ans):
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score = num_no_ans
    best_score = cur_score
    best_thresh = 0.0
    qid_list = sorted(na_probs, key=lambda k: na_probs[k])
    for qid in qid_list:
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def evaluate_v2(items, na_probs):
    exact_raw, f1_raw, has_ans, preds = {}, {}, {}, {}
    for it in items:
        qid = it["id"]
        if it["prediction"] is None:
            continue
        gold = [a for a in it["references"] if normalize_answer(a)]
        has_ans[qid] = bool(gold)
        if not gold:
            gold = [""]
        p = it["prediction"]
        preds[qid] = p
        exact_raw[qid] = max(compute_exact(a, p) for a in gold)
        f1_raw[qid] = max(compute_f1(a, p) for a in gold)
    exact, f1 = {}, {}
    for qid, s in exact_raw.items():
        pred_na = na_probs[qid] > 1.0
        exact[qid] = float(not has_ans[qid]) if pred_na else s
        f1[qid] = float(not has_ans[qid]) if pred_na else f1_raw[qid]
    out = {"exact": 100.0 * sum(exact.values()) / len(exact), "f1": 100.0 * sum(f1.values()) / len(f1), "total": len(exact)}
    has = [k for k, v in has_ans.items() if v]
    no = [k for k, v in has_ans.items() if not v]
    if has:
        out["HasAns_exact"] = 100.0 * sum(exact[k] for k in has) / len(has)
        out["HasAns_f1"] = 100.0 * sum(f1[k] for k in has) / len(has)
    out["HasAns_total"] = len(has)
    if no:
        out["NoAns_exact"] = 100.0 * sum(exact[k] for k in no) / len(no)
        out["NoAns_f1"] = 100.0 * sum(f1[k] for k in no) / len(no)
    out["NoAns_total"] = len(no)
    probs = {k: na_probs[k] for k in preds}
    out["best_exact"], out["best_exact_thresh"] = find_best_thresh(preds, exact_raw, probs, has_ans)
    out["best_f1"], out["best_f1_thresh"] = find_best_thresh(preds, f1_raw, probs, has_ans)
    return out


PAIRS = [
    ("The Denver Broncos", "Denver Broncos"),
    ("denver broncos.", "Denver Broncos"),
    ("an apple a day", "apple day"),
    ("theory", "the ory"),
    ("Anne and Thea", "anne and thea"),
    ("  lots   of\tspace\n", "lots of space"),
    ("U.S.A.", "USA"),
    ("rock-and-roll", "rock and roll"),
    ("rock–and–roll", "rockandroll"),
    ("“quoted”", "quoted"),
    ("\"quoted\"", "quoted"),
    ("Straße", "strasse"),
    ("ÉCOLE", "école"),
    ("İstanbul", "i̇stanbul"),
    ("ΟΔΟΣ", "οδος"),
    ("a", ""),
    ("the the the", "the"),
    ("", ""),
    ("", "something"),
    ("1,000", "1000"),
    ("$5.00", "5.00"),
    ("50%", "50"),
    ("half (½)", "half ½"),
    ("foo_bar", "foo bar"),
    ("cat cat dog", "cat dog dog"),
    ("New York City", "York"),
    ("the cat sat on the mat", "a cat sat on a mat"),
    ("l'amour", "lamour"),
    ("AN", "An"),
    ("éthe", "é"),
    ("the\u00a0end", "end"),
    ("x\u001fy", "x y"),
    ("\u3000全角\u3000", "全角"),
    ("Beyoncé's", "beyonces"),
    ("1858.", "in 1858"),
    ("Saint Bernadette Soubirous", "Bernadette"),
]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    pairs = []
    for pred, gold in PAIRS:
        pairs.append({
            "prediction": pred,
            "reference": gold,
            "normalized_prediction": normalize_answer(pred),
            "exact": exact_match_score(pred, gold),
            "f1_v1": float(f1_score(pred, gold)),
            "f1_v2": float(compute_f1(gold, pred)),
        })
    items = [
        {"id": "q1", "references": ["Denver Broncos", "The Denver Broncos", "Broncos"], "prediction": "the broncos"},
        {"id": "q2", "references": ["Saint Bernadette Soubirous"], "prediction": "Bernadette Soubirous in 1858"},
        {"id": "q3", "references": ["1858", "in 1858"], "prediction": "1858."},
        {"id": "q4", "references": ["a golden statue of the Virgin Mary"], "prediction": "Virgin Mary"},
        {"id": "q5", "references": ["Paris"], "prediction": "London"},
        {"id": "q6", "references": ["rock and roll", "rock-and-roll"], "prediction": "Rock & Roll"},
        {"id": "q7", "references": ["x"], "prediction": None},
    ]
    v2_items = [
        {"id": "a", "references": ["Denver Broncos"], "prediction": "Denver Broncos"},
        {"id": "b", "references": ["Denver Broncos"], "prediction": "Broncos"},
        {"id": "c", "references": [], "prediction": ""},
        {"id": "d", "references": [], "prediction": "something"},
        {"id": "e", "references": ["the"], "prediction": ""},
        {"id": "f", "references": ["Paris", "paris, France"], "prediction": "France"},
        {"id": "g", "references": ["x"], "prediction": None},
        {"id": "h", "references": ["late 1990s"], "prediction": "1990s"},
    ]
    na = {"a": 0.1, "b": 0.7, "c": 0.9, "d": 0.4, "e": 0.95, "f": 0.6, "g": 0.5, "h": 0.2}
    out = {
        "generator": "tests/data/squad_metric_cases.py (official evaluate-v1.1.py / evaluate-v2.0.py formulas)",
        "pairs": pairs,
        "v1": {"items": items, "result": evaluate_v1(items)},
        "v2": {"items": v2_items, "na_probs": [na[i["id"]] for i in v2_items], "result": evaluate_v2(v2_items, na)},
    }
    with open(os.path.join(here, "squad_metric_cases.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
