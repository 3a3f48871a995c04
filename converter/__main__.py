"""``python -m converter``: the same command line as the ``facenet-convert`` script."""

from facenet_convert.converter.core.atomic import install_interrupt_handlers

install_interrupt_handlers(exit_at_once=True)  # a signal while importing: one line, no output

from facenet_convert.converter.cli import main  # noqa: E402

main()
