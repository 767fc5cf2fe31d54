"""What machine a benchmark ran on, for the RESULTS.md sections (imported by the scripts beside it)."""
import platform


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def record(table: str, no_record: bool = False) -> None:
    """Print a benchmark's table and, unless `no_record`, append it to benchmarks/RESULTS.md."""
    from pathlib import Path
    print(table)
    if not no_record:
        path = Path(__file__).resolve().parent / "RESULTS.md"
        path.write_text(path.read_text().rstrip("\n") + "\n\n" + table)
