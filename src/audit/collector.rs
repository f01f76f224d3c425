//! The one way evidence is POSTed to a collector (the `http` and `otlp` sinks): a
//! blocking client built on first use (the sink runs on the evidence writer's thread),
//! retries with doubling backoff from 200 ms, the last failure as the error.

use std::time::Duration;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// A collector endpoint and how hard to try it.
pub struct Collector {
    url: String,
    timeout: Duration,
    retries: u32,
    client: Option<reqwest::blocking::Client>,
}

impl Collector {
    pub fn new(url: String, timeout: Duration, retries: u32) -> Collector {
        Collector {
            url,
            timeout,
            retries,
            client: None,
        }
    }

    /// POSTs `body` with these headers; `Ok` once the collector answered 2xx.
    pub fn post(
        &mut self,
        headers: &[(http::HeaderName, &'static str)],
        body: Vec<u8>,
    ) -> std::io::Result<()> {
        let client = match &self.client {
            Some(c) => c,
            None => {
                let c = reqwest::blocking::Client::builder()
                    .timeout(self.timeout)
                    .build()
                    .map_err(std::io::Error::other)?;
                self.client.insert(c)
            }
        };
        let mut backoff = FIRST_BACKOFF;
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(backoff);
                backoff *= 2;
            }
            let mut request = client.post(&self.url).body(body.clone());
            for (name, value) in headers {
                request = request.header(name, *value);
            }
            match request.send() {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("the collector answered {}", r.status()),
                Err(e) => last = format!("the collector could not be reached: {e}"),
            }
        }
        Err(std::io::Error::other(last))
    }
}
