"""`python -m course_llm …` runs the `course-llm` command line, for when the venv's `bin/` is not on PATH."""

from course_llm.cli import app

if __name__ == "__main__":
    app(prog_name="course-llm")
