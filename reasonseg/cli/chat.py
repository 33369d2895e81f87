"""`reasonseg chat`: an interactive loop like LISA's chat.py (prompt, then image path), with multi-turn memory."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ReasonSegError
from .common import add_model_arguments, load_segmenter
from .outputs import write_prediction_files


def register(subparsers) -> None:
    parser = subparsers.add_parser("chat", help="interactive reasoning segmentation in the terminal")
    add_model_arguments(parser)
    parser.add_argument("--image", default=None, help="keep chatting about this one image")
    parser.add_argument("--vis-save-path", default="vis_output")
    parser.set_defaults(func=run)


EXIT_WORDS = {"exit", "quit", "/exit", "/quit"}
NEW_CONVERSATION_WORDS = {"/new", "/reset"}


def run(args) -> int:
    segmenter = load_segmenter(args)
    print("(exit or quit to leave; /new to start a new conversation about the same image)")
    session, session_image = None, None
    while True:
        try:
            prompt = input("Please input your prompt: ").strip()
            if prompt.lower() in EXIT_WORDS:
                return 0
            if prompt.lower() in NEW_CONVERSATION_WORDS:
                if session is not None:
                    session.reset()
                print("a new conversation: earlier questions are forgotten")
                continue
            image_path = args.image or input("Please input the image path: ").strip()
        except EOFError:
            return 0
        try:
            if session is None or image_path != session_image:
                session, session_image = segmenter.chat(image_path), image_path
            prediction = session.ask(prompt, args.max_new_tokens, force_seg=args.force_seg)
        except ReasonSegError as err:  # report and keep chatting
            print(f"error: {err}", file=sys.stderr)
            continue
        print(f"text_output: {prediction.text}")
        written = write_prediction_files(session.image, prediction, prompt, Path(args.vis_save_path), Path(image_path).stem)
        for path in written:
            print(f"{path} has been saved.")
