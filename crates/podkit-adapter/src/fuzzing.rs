//! What the fuzz target `statsd_packets` (`fuzz/`) and the StatsD randomized test run.

/// Feeds `data` to a StatsD source as one packet (the first byte chooses whether each line's
/// trailing CR is stripped, as on TCP), twice so cached series are taken too, then checks
/// the scrape is exposition text the adapter's own reader takes back.
pub fn statsd_packet(data: &[u8]) {
    let [first, data @ ..] = data else { return };
    let s = crate::statsd::Statsd::for_fuzzing();
    s.handle(data, first & 1 == 1);
    s.handle(data, first & 1 == 1);
    let mut out = crate::expo::Scrape::new();
    s.collect(&mut out);
    let body = out.render();
    let mut back = crate::expo::Scrape::new();
    if let Err(e) = crate::promtext::parse_into(&body, &Vec::new(), &mut back) {
        panic!("the scrape is not exposition text ({} at line {}):\n{body}", e.reason, e.line);
    }
}
