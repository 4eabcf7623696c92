"""LlamaIndex's own query and chat engines over the library's two stages, built without globals.

:func:`build_query_engine` returns LlamaIndex's ``RetrieverQueryEngine`` with
``get_response_synthesizer(...)``; :func:`build_chat_engine` one of its chat engines
(``condense_plus_context``, ``context``, ``condense_question``). Every LlamaIndex constructor is
given its ``llm``, ``callback_manager`` and prompt helpers explicitly, so the global ``Settings``
is never read or written (their ``from_defaults`` would read ``Settings.llm`` and create a
global callback manager).

Without an LLM the query engine is retrieval-only: :class:`SourcesOnlySynthesizer` answers with
the sources listed, best first, and never calls a model.

Example:
    >>> from llama_index.core.llms import MockLLM
    >>> engine = build_query_engine(retriever, llm=MockLLM())  # doctest: +SKIP
    >>> print(engine.query("what is BM25?"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.response.schema import RESPONSE_TYPE, Response, StreamingResponse
from llama_index.core.callbacks import CallbackManager
from llama_index.core.indices.prompt_helper import ChatPromptHelper, PromptHelper
from llama_index.core.llms import LLM, MockLLM
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.response_synthesizers import BaseSynthesizer, get_response_synthesizer
from llama_index.core.schema import NodeWithScore, QueryType

from gl_retrieval.answers.llms import llm_errors
from gl_retrieval.errors import ConfigError
from gl_retrieval.retrieval.results import format_results

if TYPE_CHECKING:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.chat_engine.types import BaseChatEngine
    from llama_index.core.llms import ChatMessage
    from llama_index.core.memory import BaseMemory
    from llama_index.core.postprocessor.types import BaseNodePostprocessor

__all__ = [
    "ASK_PROMPT",
    "CHAT_MODES",
    "SourcesOnlySynthesizer",
    "build_chat_engine",
    "build_query_engine",
    "numbered_sources",
    "retrieval_only_text",
]

#: The chat modes :func:`build_chat_engine` builds (LlamaIndex's names).
CHAT_MODES = ("condense_plus_context", "context", "condense_question")

#: ``ask``'s question-answering prompt: numbered sources, cited as [1], [2], ...
ASK_PROMPT = (
    "Sources:\n{context_str}\n\n"
    "Answer the question using only the numbered sources above. Cite the sources you use as "
    "[1], [2], ... If the sources do not contain the answer, say that you do not know.\n"
    "Question: {query_str}\n"
    "Answer: "
)


def numbered_sources(
    nodes: Sequence[NodeWithScore], *, max_chars: int = 1200
) -> list[NodeWithScore]:
    """New nodes whose text is ``[i] <source text>`` (cut at a word boundary past ``max_chars``),
    for the LLM to cite; the originals are not modified.

    Example:
        >>> from llama_index.core.schema import TextNode
        >>> hits = [NodeWithScore(node=TextNode(text="BM25 is  lexical."))]
        >>> [n.node.get_content() for n in numbered_sources(hits)]
        ['[1] BM25 is lexical.']
    """
    from llama_index.core.schema import MetadataMode, TextNode

    out = []
    for i, hit in enumerate(nodes, start=1):
        text = " ".join(hit.node.get_content(metadata_mode=MetadataMode.NONE).split())
        if len(text) > max_chars:
            text = text[:max_chars].rsplit(" ", 1)[0] + " …"
        out.append(NodeWithScore(node=TextNode(text=f"[{i}] {text}"), score=hit.score))
    return out


def retrieval_only_text(nodes: Sequence[NodeWithScore]) -> str:
    """What a retrieval-only engine answers: the sources, best first, with their scores.

    Example:
        >>> print(retrieval_only_text([]))
        Retrieval only (the config has no llm section): 0 sources, best first.
    """
    head = (
        "Retrieval only (the config has no llm section): "
        f"{len(nodes)} source{'s' if len(nodes) != 1 else ''}, best first."
    )
    return "\n".join([head, *format_results(nodes, width=100)])


class SourcesOnlySynthesizer(BaseSynthesizer):
    """A response synthesizer that calls no LLM: the response lists the sources.

    ``response.source_nodes`` holds the results, ``response.response`` (and so
    ``print(response)``) lists them with their scores, and ``response.metadata`` says
    ``retrieval_only``. With ``streaming=True`` the listing comes as one chunk of a
    ``StreamingResponse``.
    """

    def __init__(self, *, streaming: bool = False) -> None:
        llm = MockLLM()  # never called; given so that nothing reads Settings.llm
        super().__init__(
            llm=llm,
            callback_manager=CallbackManager([]),
            prompt_helper=PromptHelper.from_llm_metadata(llm.metadata),
            streaming=streaming,
        )

    def _get_prompts(self) -> PromptDictType:
        return {}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        return None

    def get_response(self, query_str: str, text_chunks: Sequence[str], **kwargs: Any) -> str:
        return "\n".join(text_chunks)

    async def aget_response(self, query_str: str, text_chunks: Sequence[str], **kwargs: Any) -> str:
        return self.get_response(query_str, text_chunks)

    def synthesize(
        self,
        query: QueryType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        sources = [*nodes, *(additional_source_nodes or ())]
        text = retrieval_only_text(sources)
        meta = {"retrieval_only": True}
        if self._streaming:
            return StreamingResponse(response_gen=iter([text]), source_nodes=sources, metadata=meta)
        return Response(response=text, source_nodes=sources, metadata=meta)

    async def asynthesize(
        self,
        query: QueryType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        if self._streaming:  # StreamingResponse's async side wants an async generator
            response = self.synthesize(query, nodes, additional_source_nodes)

            async def agen() -> Any:
                for chunk in response.response_gen:  # type: ignore[union-attr]
                    yield chunk

            return StreamingResponse(
                response_gen=iter(()),
                async_response_gen=agen(),
                source_nodes=response.source_nodes,
                metadata=response.metadata,
            )
        return self.synthesize(query, nodes, additional_source_nodes)


def _helpers(llm: LLM) -> dict[str, Any]:
    """What LlamaIndex would otherwise take from ``Settings``: its prompt helpers and callbacks.

    Reading the LLM's metadata may ask its server (Ollama's context window): failures are one
    line, as for any LLM call."""
    with llm_errors(llm):
        metadata = llm.metadata
    return {
        "callback_manager": CallbackManager([]),
        "prompt_helper": PromptHelper.from_llm_metadata(metadata),
        "chat_prompt_helper": ChatPromptHelper.from_llm_metadata(metadata),
    }


def build_query_engine(
    retriever: BaseRetriever,
    *,
    llm: LLM | None,
    response_mode: str = "compact",
    streaming: bool = False,
    text_qa_template: Any = None,
    refine_template: Any = None,
    node_postprocessors: Sequence[BaseNodePostprocessor] = (),
    **synth_kwargs: Any,
) -> RetrieverQueryEngine:
    """LlamaIndex's ``RetrieverQueryEngine`` over ``retriever``, answering with ``llm``.

    Args:
        retriever: The two-stage retriever (or any LlamaIndex retriever).
        llm: The answering LLM; None: retrieval-only (:class:`SourcesOnlySynthesizer`).
        response_mode: LlamaIndex's response mode (``compact``, ``refine``,
            ``tree_summarize``, ``simple_summarize``, ``accumulate``, ...).
        streaming: Return ``StreamingResponse`` objects.
        text_qa_template: Replaces LlamaIndex's question-answering prompt.
        refine_template: Replaces LlamaIndex's refine prompt.
        node_postprocessors: Run on the retrieved nodes before synthesis.
        **synth_kwargs: More ``get_response_synthesizer`` arguments.

    Raises:
        ConfigError: an unknown ``response_mode``.
    """
    if llm is None:
        synth: BaseSynthesizer = SourcesOnlySynthesizer(streaming=streaming)
    else:
        from llama_index.core.response_synthesizers.type import ResponseMode

        try:
            mode = ResponseMode(response_mode)
        except ValueError:
            valid = ", ".join(m.value for m in ResponseMode)
            raise ConfigError(
                f"unknown response_mode {response_mode!r}; use one of: {valid}"
            ) from None
        synth = get_response_synthesizer(
            llm=llm,
            response_mode=mode,
            streaming=streaming,
            text_qa_template=text_qa_template,
            refine_template=refine_template,
            **{**_helpers(llm), **synth_kwargs},
        )
    return RetrieverQueryEngine(
        retriever=retriever,
        response_synthesizer=synth,
        node_postprocessors=list(node_postprocessors),
        callback_manager=CallbackManager([]),
    )


def _memory(llm: LLM, chat_history: Sequence[ChatMessage] | None) -> BaseMemory:
    from llama_index.core.memory import ChatMemoryBuffer

    with llm_errors(llm):
        window = llm.metadata.context_window
    limit = max(512, window - 256) if window and window > 0 else 3000
    return ChatMemoryBuffer.from_defaults(chat_history=list(chat_history or []), token_limit=limit)


def build_chat_engine(
    retriever: BaseRetriever,
    *,
    llm: LLM,
    chat_mode: str = "condense_plus_context",
    memory: BaseMemory | None = None,
    system_prompt: str | None = None,
    chat_history: Sequence[ChatMessage] | None = None,
    node_postprocessors: Sequence[BaseNodePostprocessor] = (),
    **kwargs: Any,
) -> BaseChatEngine:
    """One of LlamaIndex's chat engines over ``retriever``, answering with ``llm``.

    Args:
        retriever: The two-stage retriever.
        llm: The answering (and condensing) LLM.
        chat_mode: ``condense_plus_context`` (a follow-up question is rewritten with the
            conversation, then retrieved for; the sources go into the system prompt),
            ``context`` (the message is retrieved for as it is) or ``condense_question``
            (the rewritten question goes through a query engine).
        memory: The conversation memory; default a ``ChatMemoryBuffer`` sized to the LLM's
            context window, holding ``chat_history``.
        system_prompt: Prepended to every turn.
        chat_history: Earlier turns, when ``memory`` is not given.
        node_postprocessors: Run on the retrieved nodes.
        **kwargs: More arguments of the chosen engine (e.g. ``context_prompt``,
            ``condense_prompt``).

    Raises:
        ConfigError: an unknown ``chat_mode``.
    """
    mem = memory if memory is not None else _memory(llm, chat_history)
    callbacks = CallbackManager([])
    posts = list(node_postprocessors)
    if chat_mode == "condense_plus_context":
        from llama_index.core.chat_engine import CondensePlusContextChatEngine

        return CondensePlusContextChatEngine(
            retriever=retriever,
            llm=llm,
            memory=mem,
            system_prompt=system_prompt,
            node_postprocessors=posts,
            callback_manager=callbacks,
            **kwargs,
        )
    if chat_mode == "context":
        from llama_index.core.chat_engine import ContextChatEngine
        from llama_index.core.llms import ChatMessage, MessageRole

        prefix = (
            []
            if system_prompt is None
            else [ChatMessage(role=MessageRole.SYSTEM, content=system_prompt)]
        )
        return ContextChatEngine(
            retriever=retriever,
            llm=llm,
            memory=mem,
            prefix_messages=prefix,
            node_postprocessors=posts,
            callback_manager=callbacks,
            **kwargs,
        )
    if chat_mode == "condense_question":
        from llama_index.core.chat_engine import CondenseQuestionChatEngine
        from llama_index.core.chat_engine.condense_question import DEFAULT_PROMPT

        engine = build_query_engine(retriever, llm=llm, node_postprocessors=posts)
        return CondenseQuestionChatEngine(
            query_engine=engine,
            condense_question_prompt=kwargs.pop("condense_question_prompt", DEFAULT_PROMPT),
            memory=mem,
            llm=llm,
            callback_manager=callbacks,
            **kwargs,
        )
    raise ConfigError(f"unknown chat_mode {chat_mode!r}; use one of: {', '.join(CHAT_MODES)}")
