//! Values out of a Prometheus text scrape.

/// The sum of the values of every sample line starting with `prefix` (a metric name, or a
/// name with the start of its labels): `sum(rate(...))`-style totals across label values.
pub fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of the one sample named exactly `name` (labels included as scraped, e.g.
/// `x{key="default"}`).
pub fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_by_prefix_and_read_by_exact_name() {
        let text =
            "# HELP x_total x\nx_total{topic=\"a\"} 2\nx_total{topic=\"b\"} 3.5\ny_total 9\n";
        assert_eq!(sum(text, "x_total"), 5.5);
        assert_eq!(sum(text, "x_total{topic=\"b\"}"), 3.5);
        assert_eq!(sum(text, "z"), 0.0);
        assert_eq!(value(text, "y_total"), Some(9.0));
        assert_eq!(value(text, "x_total"), None);
    }
}
