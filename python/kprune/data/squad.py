"""SQuAD v1.1 / v2.0: the nested JSON files and flat QA records (question, context, answers)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import DataError
from ..tasks import TaskSpec
from .example import Example, _Malformed, _match_column, _RowCounter

logger = logging.getLogger(__name__)


def _answers_list(raw: Any) -> list[dict]:
    """SQuAD ``[{"text", "answer_start"}]`` from that form or the ``datasets`` dict-of-lists form."""
    if raw is None:
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise _Malformed(f"answers {raw[:50]!r} are not JSON") from None
    if isinstance(raw, dict):
        texts, starts = raw.get("text", []), raw.get("answer_start", [])
        if len(texts) != len(starts):
            raise _Malformed("answers have different numbers of texts and starts")
        raw = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
    if not isinstance(raw, list):
        raise _Malformed(f"answers {raw!r} are not a list")
    answers = []
    for answer in raw:
        if not isinstance(answer, dict) or "text" not in answer:
            raise _Malformed(f"answer {answer!r} has no text")
        try:
            start = int(answer.get("answer_start", -1))
        except (TypeError, ValueError):
            raise _Malformed(f"answer_start {answer.get('answer_start')!r} is not an integer") from None
        answers.append({"text": str(answer["text"]), "answer_start": start})
    return answers


def _aligned(context: str, answer: dict) -> dict:
    """The answer with ``answer_start`` pointing at its text in ``context`` (nearest occurrence).

    An answer whose text is not in the context keeps its text (it still counts when scoring) with
    ``answer_start`` -1; :func:`encode` then takes the next answer for the start/end positions.
    """
    text, start = answer["text"], answer["answer_start"]
    if start >= 0 and context[start:start + len(text)] == text:
        return answer
    occurrences, position = [], context.find(text) if text else -1
    while position != -1:
        occurrences.append(position)
        position = context.find(text, position + 1)
    if not occurrences:
        logger.debug("answer %r is not in its context: kept for scoring only", text[:40])
        return {"text": text, "answer_start": -1}
    return {"text": text, "answer_start": min(occurrences, key=lambda p: abs(p - start))}


def _qa_example(spec: TaskSpec, qid: Any, question: Any, context: Any, answers: Any,
                is_impossible: Any, source: str, where: str) -> Example:
    if not isinstance(question, str) or not isinstance(context, str):
        raise _Malformed("question or context is missing")
    answers = _answers_list(answers)
    if isinstance(is_impossible, str):
        impossible = is_impossible.strip().lower() in ("1", "true", "yes")
    else:
        impossible = bool(is_impossible)
    if impossible and spec.name == "squad":
        raise DataError(f"{source} holds unanswerable questions (e.g. id {qid!r}, {where}): it is "
                        f"SQuAD v2.0 data; use task 'squad_v2'")
    if impossible:
        answers = []  # SQuAD v2 keeps plausible answers elsewhere; gold is no-answer
    else:
        answers = [_aligned(context, a) for a in answers]
    return Example(texts=(question, context), label=None, id=None if qid is None else str(qid),
                   question=question, context=context, answers=answers, is_impossible=impossible)


def _read_squad_json(spec: TaskSpec, file: Path) -> list[Example]:
    source = str(file)
    try:
        with open(file, encoding="utf-8-sig") as handle:
            text = handle.read()
    except OSError as exc:
        raise DataError(f"cannot read {source}: {exc}") from None
    if not text.strip():
        raise DataError(f"{source} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # JSON lines of flat records in a .json file
        lines = [(i + 1, _safe_json(l)) for i, l in enumerate(text.splitlines()) if l.strip()]
        names = next((list(r) for _, r in lines if isinstance(r, dict)), [])
        if not names:
            raise DataError(f"{source} is neither SQuAD JSON nor JSON lines") from None
        return _qa_examples_from_records(spec, lines, names, source)
    if isinstance(data, list):
        names = next((list(r) for r in data if isinstance(r, dict)), [])
        return _qa_examples_from_records(spec, [(i + 1, r) for i, r in enumerate(data)], names, source)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{source} is not SQuAD JSON: expected an object with a \"data\" list of articles")
    counter = _RowCounter(source)
    examples: list[Example] = []
    for article_number, article in enumerate(data["data"]):
        paragraphs = article.get("paragraphs", []) if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            counter.skip(f"article {article_number}", "no paragraphs")
            continue
        for paragraph in paragraphs:
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            for qa in (paragraph.get("qas", []) if isinstance(paragraph, dict) else []):
                where = f"article {article_number}"
                try:
                    if not isinstance(qa, dict):
                        raise _Malformed("question is not an object")
                    examples.append(_qa_example(spec, qa.get("id"), qa.get("question"), context,
                                                qa.get("answers"), qa.get("is_impossible", False),
                                                source, where))
                    counter.good += 1
                except _Malformed as exc:
                    counter.skip(f"{where}, question {qa.get('id') if isinstance(qa, dict) else '?'}",
                                 str(exc))
    counter.finish()
    return examples


def _safe_json(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _qa_examples_from_records(spec: TaskSpec, records: Iterable[tuple[int | str, Any]],
                              names: Sequence[str], source: str) -> list[Example]:
    question_column = _match_column(names, ("question", "query"))
    context_column = _match_column(names, ("context", "passage", "paragraph"))
    if question_column is None or context_column is None:
        raise DataError(f"{source} has columns {list(names)}; task {spec.name!r} needs 'question' and "
                        f"'context' columns (and 'answers' for labelled data)")
    id_column = _match_column(names, ("id", "qid", "question_id"))
    answers_column = _match_column(names, ("answers", "answer"))
    impossible_column = _match_column(names, ("is_impossible",))
    counter = _RowCounter(source)
    examples = []
    for line, record in records:
        where = f"line {line}"
        try:
            if not isinstance(record, dict):
                raise _Malformed("not a record with named columns")
            answers = record.get(answers_column) if answers_column else None
            impossible = record.get(impossible_column) if impossible_column else None
            if impossible is None and spec.name == "squad_v2" and answers is not None:
                impossible = not _answers_list(answers)
            examples.append(_qa_example(spec, record.get(id_column, line) if id_column else line,
                                        record.get(question_column), record.get(context_column),
                                        answers, impossible or False, source, where))
            counter.good += 1
        except _Malformed as exc:
            counter.skip(line, str(exc))
    counter.finish()
    return examples
