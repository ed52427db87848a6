// The JDK's own HTTP client with its defaults, for tests/real_clients.rs. Run with Java 11+'s
// single-file source launcher:
//
//     java tests/clients/JdkClient.java get URL [post URL FILE] ...
//
// Every operation uses a new HttpClient.newHttpClient(): its default version is HTTP_2, so on
// an http:// URL each first request offers an upgrade (`Connection: Upgrade, HTTP2-Settings`,
// `Upgrade: h2c`, `HTTP2-Settings: ...`), as every Java service using this client does.
// `post URL FILE` streams FILE through BodyPublishers.ofInputStream: the length is unknown to
// the client, so the body goes out chunked.
//
// One line per operation on stdout: `OP STATUS VERSION BODY_LENGTH BODY_SHA256 PREVIEW`, where
// VERSION is 1.1 or 2 and PREVIEW is the body's first bytes with anything unprintable as '.'.

import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.security.MessageDigest;
import java.time.Duration;

public class JdkClient {
    public static void main(String[] args) throws Exception {
        int i = 0;
        while (i < args.length) {
            String op = args[i++];
            URI uri = URI.create(args[i++]);
            HttpClient client = HttpClient.newHttpClient();
            HttpRequest.Builder request = HttpRequest.newBuilder(uri).timeout(Duration.ofSeconds(30));
            switch (op) {
                case "get":
                    request.GET();
                    break;
                case "post":
                    String file = args[i++];
                    request.POST(HttpRequest.BodyPublishers.ofInputStream(() -> open(file)));
                    break;
                default:
                    throw new IllegalArgumentException("unknown operation " + op);
            }
            HttpResponse<InputStream> response =
                client.send(request.build(), HttpResponse.BodyHandlers.ofInputStream());
            MessageDigest sha256 = MessageDigest.getInstance("SHA-256");
            StringBuilder preview = new StringBuilder();
            long length = 0;
            byte[] buffer = new byte[64 * 1024];
            try (InputStream body = response.body()) {
                for (int n; (n = body.read(buffer)) > 0; ) {
                    sha256.update(buffer, 0, n);
                    for (int k = 0; k < n && preview.length() < 80; k++) {
                        int b = buffer[k] & 0xff;
                        preview.append(b > 32 && b < 127 ? (char) b : '.');
                    }
                    length += n;
                }
            }
            StringBuilder hex = new StringBuilder();
            for (byte b : sha256.digest()) {
                hex.append(String.format("%02x", b));
            }
            String version = response.version() == HttpClient.Version.HTTP_1_1 ? "1.1" : "2";
            System.out.println(op + " " + response.statusCode() + " " + version + " " + length
                + " " + hex + " " + preview);
        }
        System.exit(0);
    }

    private static InputStream open(String file) {
        try {
            return new FileInputStream(file);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
