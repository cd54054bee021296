"""codecarbon's offline tracker around each demo run, when the ``carbon`` extra is there."""

CARBON_HINT = "n/a (pip install graft-select[carbon])"


def _scalar(value):
    return None if value is None else float(value)


class Energy:
    """Start and stop one codecarbon tracker per run; ``note`` says why figures are missing."""

    def __init__(self, country_iso_code):
        self.country_iso_code = country_iso_code
        try:
            import codecarbon
        except ImportError:
            self.tracker_class, self.note = None, CARBON_HINT
            return
        import logging

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self.tracker_class, self.note = codecarbon.OfflineEmissionsTracker, None

    def start(self):
        """A started tracker, or None without codecarbon (or after a tracker failure)."""
        if self.tracker_class is None:
            return None
        try:
            tracker = self.tracker_class(country_iso_code=self.country_iso_code,
                                         log_level="error", save_to_file=False)
            tracker.start()
            return tracker
        except Exception as exc:  # a tracker failure must not end the demo; it is reported
            self.note = f"n/a (codecarbon failed: {type(exc).__name__}: {exc})"
            self.tracker_class = None
            return None

    def stop(self, tracker, run):
        """Stop ``tracker`` and store ``energy_kwh`` and ``co2_kg`` (or None) in ``run``."""
        run["energy_kwh"] = run["co2_kg"] = None
        if tracker is None:
            return
        try:
            co2 = tracker.stop()
            data = getattr(tracker, "final_emissions_data", None)
            run["energy_kwh"] = _scalar(getattr(data, "energy_consumed", None))
            run["co2_kg"] = _scalar(co2)
        except Exception as exc:  # reported in the table's note, like a failed start
            self.note = f"n/a (codecarbon failed: {type(exc).__name__}: {exc})"
