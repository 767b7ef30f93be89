using System.Net;
using System.Text.Json.Nodes;
using Dingo.Model;
using Dingo.Tests.Support;
using Microsoft.Playwright;
using Xunit.Abstractions;

namespace Dingo.Tests.Broker;

/// <summary>
/// The instance dashboard (OSB dashboard_url) in a real headless browser (Debian's chromium, driven by Playwright) on a
/// real platform: the provision hands out the URL, the page shows the primary and, without a reload, the new primary
/// after a switchover; a wrong secret and an unknown instance get the same 404; what the page reads holds no password.
/// </summary>
[SuiteCost(70)]
public sealed class DashboardTests(ITestOutputHelper output)
{
    private const string Chromium = "/usr/bin/chromium";

    [Fact]
    public async Task The_dashboard_shows_the_primary_and_follows_a_switchover_in_a_real_browser()
    {
        Assert.True(File.Exists(Chromium), $"{Chromium} is missing: ./dingo test installs Debian's chromium");
        await using var platform = await TestPlatform.StartAsync(cells: 2);
        var id = "dash-" + Guid.NewGuid().ToString("N")[..8];
        var (status, accepted) = await platform.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", TestPlatform.ProvisionBody(Catalog.ClusterPlanId));
        Assert.True(status == 202, accepted.ToJsonString());
        var url = (string)accepted["dashboard_url"]!;
        output.WriteLine($"dashboard_url: {url[..url.IndexOf("?t=", StringComparison.Ordinal)]}?t=…");
        Assert.StartsWith($"{platform.Settings.Broker.Url.TrimEnd('/')}/dashboard/{id}?t=", url, StringComparison.Ordinal);
        var final = await platform.WaitForOperationAsync(id, TimeSpan.FromSeconds(90));
        Assert.Equal("succeeded", (string?)final["state"]);
        // A fetch of the instance, and the same provision sent again, answer the same URL.
        var (_, fetched) = await platform.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}");
        Assert.Equal(url, (string?)fetched["dashboard_url"]);
        var (againStatus, again) = await platform.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", TestPlatform.ProvisionBody(Catalog.ClusterPlanId));
        Assert.Equal(200, againStatus);
        Assert.Equal(url, (string?)again["dashboard_url"]);
        var binding = await platform.BindAsync(id, "b1", Catalog.ClusterPlanId);

        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        // A wrong secret, no secret and an unknown instance: one and the same 404.
        var token = url[(url.IndexOf("?t=", StringComparison.Ordinal) + 3)..];
        var wrong = url[..^4] + (url[^4..] == "AAAA" ? "BBBB" : "AAAA");
        var unknown = url.Replace($"/dashboard/{id}?", $"/dashboard/{id}x?", StringComparison.Ordinal);
        var refusals = new List<string>();
        foreach (var refused in new[] { wrong, url[..url.IndexOf('?', StringComparison.Ordinal)], unknown, wrong.Replace("?t=", "/state?t=", StringComparison.Ordinal) })
        {
            using var answer = await http.GetAsync(refused);
            Assert.Equal(HttpStatusCode.NotFound, answer.StatusCode);
            refusals.Add(await answer.Content.ReadAsStringAsync());
        }
        Assert.Single(refusals.Distinct());

        // What the page reads: the nodes and no secret (the superuser's, the binding's, the dashboard's own).
        using (var state = await http.GetAsync(url.Replace("?t=", "/state?t=", StringComparison.Ordinal)))
        {
            Assert.Equal(HttpStatusCode.OK, state.StatusCode);
            Assert.Equal("no-referrer", state.Headers.GetValues("Referrer-Policy").Single());
            Assert.Contains("no-store", state.Headers.CacheControl!.ToString(), StringComparison.Ordinal);
            var text = await state.Content.ReadAsStringAsync();
            Assert.DoesNotContain((string)binding["password"]!, text, StringComparison.Ordinal);
            Assert.DoesNotContain(token, text, StringComparison.Ordinal);
            Assert.DoesNotContain("password", text, StringComparison.OrdinalIgnoreCase);
            Assert.Equal(2, JsonNode.Parse(text)!["nodes"]!.AsArray().Count);
        }

        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions { ExecutablePath = Chromium, Headless = true, Args = ["--no-sandbox"] });
        var page = await browser.NewPageAsync();
        var problems = new List<string>();
        page.Console += (_, message) => { if (message.Type == "error") problems.Add(message.Text); };
        page.PageError += (_, error) => problems.Add(error);
        var response = await page.GotoAsync(url);
        Assert.Equal(200, response!.Status);
        Assert.Contains("default-src 'none'", (await response.AllHeadersAsync())["content-security-policy"], StringComparison.Ordinal);

        var leader = await LeaderAsync(platform, id);
        await page.WaitForSelectorAsync($"tr[data-node='{leader}'][data-role='primary']", new PageWaitForSelectorOptions { Timeout = 30_000 });
        Assert.Equal(leader, await page.TextContentAsync("#primary"));
        var replica = (await platform.Store.ListAsync<NodeSpec>(platform.Store.Keys.Nodes(id), CancellationToken.None)).Select(n => n.Value.NodeId).Single(n => n != leader);
        await page.WaitForSelectorAsync($"tr[data-node='{replica}'][data-role='replica']", new PageWaitForSelectorOptions { Timeout = 30_000 });
        output.WriteLine($"the page shows {leader} as primary, {replica} as replica");

        // A switchover: the page, left open, shows the new primary by itself.
        var (switched, switchBody) = await platform.SendAsync(HttpMethod.Post, $"/admin/service_instances/{id}/switchover", new JsonObject { ["to"] = replica }.ToJsonString());
        Assert.True(switched == 202, switchBody.ToJsonString());
        var requested = DateTime.UtcNow;
        await page.WaitForSelectorAsync($"tr[data-node='{replica}'][data-role='primary']", new PageWaitForSelectorOptions { Timeout = 60_000 });
        Assert.Equal(replica, await page.TextContentAsync("#primary"));
        output.WriteLine($"the page showed {replica} as primary {(DateTime.UtcNow - requested).TotalSeconds:0.0}s after the switchover was asked");
        var events = await page.TextContentAsync("#events tbody");
        Assert.False(string.IsNullOrWhiteSpace(events), "the events table is empty");
        Assert.Empty(problems);

        // Deleted: the dashboard is gone with it, and says so.
        var (deleting, _) = await platform.SendAsync(HttpMethod.Delete, $"/v2/service_instances/{id}?accepts_incomplete=true&service_id={Catalog.ServiceId}&plan_id={Catalog.ClusterPlanId}");
        Assert.Equal(202, deleting);
        await Eventually.UntilAsync(async () => (await http.GetAsync(url)).StatusCode == HttpStatusCode.NotFound, TimeSpan.FromSeconds(30), "the dashboard of a deleted instance: 404");
        await page.WaitForSelectorAsync("#problem:not([hidden])", new PageWaitForSelectorOptions { Timeout = 10_000 });
        output.WriteLine("after the deletion the page says: " + await page.TextContentAsync("#problem"));
    }

    [Fact]
    [Trait(Tier.Name, Tier.Fast)]
    public void A_dashboard_secret_belongs_to_one_instance_and_its_superuser_password()
    {
        static InstanceRecord Instance(string id, string password) => new()
        {
            Id = id, ServiceId = Catalog.ServiceId, PlanId = Catalog.SoloPlanId, OrganizationGuid = "o", SpaceGuid = "s",
            Port = 20000, NodeCount = 1, Superuser = new Credentials("dingo_admin", password),
        };
        var a = Dingo.Broker.Dashboard.Token(Instance("a", "secret-1"));
        Assert.Equal(a, Dingo.Broker.Dashboard.Token(Instance("a", "secret-1")));
        Assert.Equal(24, a.Length);
        Assert.Matches("^[A-Za-z0-9_-]{24}$", a);
        Assert.NotEqual(a, Dingo.Broker.Dashboard.Token(Instance("b", "secret-1")));
        Assert.NotEqual(a, Dingo.Broker.Dashboard.Token(Instance("a", "secret-2")));
        var broker = new Dingo.Config.BrokerSettings
        {
            Url = "http://10.0.0.1:8080/", Username = "u", Password = "p", InstanceQuota = 1, BindingHost = "h",
            DeletedOperationRetention = TimeSpan.FromHours(1), TombstoneRetention = TimeSpan.FromDays(1), ProvisionTimeout = TimeSpan.FromMinutes(5),
            ProvisionFailureGrace = TimeSpan.FromSeconds(30), AkkaPort = 4053,
        };
        Assert.Equal($"http://10.0.0.1:8080/dashboard/a?t={a}", Dingo.Broker.Dashboard.Url(broker, Instance("a", "secret-1")));
        Assert.Equal($"https://db.example.org/dashboard/a?t={a}", Dingo.Broker.Dashboard.Url(broker with { PublicUrl = "https://db.example.org/" }, Instance("a", "secret-1")));
    }

    private static async Task<string> LeaderAsync(TestPlatform platform, string id)
    {
        string? leader = null;
        await Eventually.UntilAsync(async () =>
        {
            leader = (await platform.Store.GetAsync<LeaderRecord>(platform.Store.Keys.Leader(id), CancellationToken.None))?.Value.NodeId;
            return leader is not null;
        }, TimeSpan.FromSeconds(30), $"a leader of {id}");
        return leader!;
    }
}
